"""What both servers need and neither owns: serving infrastructure and the HTTP/1.1 client
(:mod:`infra.http1`), never protocol rules.

``settings_layers`` (settings from defaults, a TOML file, the environment and flags),
``serving`` (uvicorn, its socket and signals), ``head`` (the bounded request head),
``errors`` (the error answer's shape) and ``openapi`` (the OpenAPI documents' form).

``proxy`` and ``jobserver`` never import each other; both may import this package. The
job protocol's rules (request bodies, job ids, callback checks) are not here: each
server keeps its own reading of them.
"""
