"""The floor for cold start: a functions-framework function that does nothing."""

import functions_framework


@functions_framework.cloud_event
def on_event(cloud_event):
    return None
