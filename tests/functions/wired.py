"""A function module shaped like main.py, wired to the in-process simulator and in-memory adapters.

functions-framework loads it from its path, as it loads main.py; tests reach
the rig through ``sys.modules["wired"]`` after ``create_app``.
"""

import flask
import functions_framework

from function import Runtime
from tests.support import Rig

rig = Rig()
runtime = Runtime(rig.service, log=rig.log, project=rig.settings.project)


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
