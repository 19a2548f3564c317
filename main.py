"""Cloud Functions entry points. The work lives in the ``function`` package."""

import functions_framework

from function import Runtime

# Built at start-up so a bad setting fails the deployment, and reused by every invocation.
runtime = Runtime.from_environment()


@functions_framework.cloud_event
def on_event(cloud_event):
    runtime.on_event(cloud_event)


@functions_framework.http
def on_http(request):
    return runtime.on_http(request)
