"""Cloud Functions entry points. The work lives in the ``function`` package."""

import gc

# The recipe of the gc module's docs for a server that forks workers after loading the app, as
# gunicorn does: no collections while the imports below allocate (a few ms of cold start), then the
# survivors frozen, so the workers' collections never write to, and so never copy, the shared pages.
gc.disable()
try:
    import flask
    import functions_framework

    from function import Runtime

    # Built at start-up so a bad setting fails the deployment, and reused by every invocation.
    runtime = Runtime.from_environment()
finally:
    gc.freeze()
    gc.enable()


@functions_framework.cloud_event
def on_event(cloud_event):
    runtime.on_event(cloud_event, flask.request.headers)


@functions_framework.http
def on_http(request):
    return runtime.on_http(request)


@functions_framework.cloud_event
def on_request(cloud_event):
    runtime.on_request(cloud_event, flask.request.headers)


@functions_framework.cloud_event
def on_check(cloud_event):
    runtime.on_check(cloud_event, flask.request.headers)


@functions_framework.http
def on_resume(request):
    return runtime.on_resume(request)
