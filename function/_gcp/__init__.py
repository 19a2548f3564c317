"""Google's REST APIs over httpx: the shared transport, credentials, error decoding, and one module per API used."""
