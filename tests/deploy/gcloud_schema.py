"""Checks JSON definitions against the API messages the installed gcloud ships, which are generated from
Google's discovery documents: ``python gcloud_schema.py SDK_ROOT SERVICE VERSION MESSAGE FILE...`` prints
one line per field the message does not define or enum value it does not list, and exits 1 if any.

Run as a separate process, with the SDK's libraries on the path, so they never mix with the project's.
"""

from __future__ import annotations

import sys


def problems(message, where: str) -> list[str]:  # noqa: ANN001 - an apitools message
    kind = type(message).__name__
    found = [
        f"{where}.{name}: {kind} has no such field, or not this value" for name in message.all_unrecognized_fields()
    ]
    for field in message.all_fields():
        value = message.get_assigned_value(field.name)
        for item in value if isinstance(value, list) else [value]:
            if hasattr(item, "all_unrecognized_fields"):
                found += problems(item, f"{where}.{field.name}")
    return found


def main(argv: list[str]) -> int:
    sdk, service, version, name, *files = argv
    sys.path[:0] = [f"{sdk}/lib", f"{sdk}/lib/third_party"]
    from apitools.base.py import encoding  # noqa: PLC0415 - only on the SDK's path
    from googlecloudsdk.api_lib.util import apis  # noqa: PLC0415

    message_type = getattr(apis.GetMessagesModule(service, version), name)
    found = []
    for path in files:
        with open(path) as file:
            # apitools keeps an unknown field, or an enum value the message does not list, as unrecognized.
            found += problems(encoding.JsonToMessage(message_type, file.read()), path)
    print("\n".join(found))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
