"""Fine-grained authorisation in front of any TAMS store (AppNote 0016's auth proxy).

Run it with ``python -m authz_proxy``; build it in code with ``app.create_app(config)`` or
``app.start_proxy(config)``. ``rules`` holds the route table and the permission decisions,
``tokens`` the JWT checks, ``handlers`` what is done per kind of route, ``listing`` the filtered
paging, ``upstream`` the calls to the store, ``config`` the settings.
"""
