"""The sandbox agent: serves K slot workspaces over HTTP behind a bearer token.

It ships into sandboxes, so it depends on aiohttp and the standard library only and
never imports the kernel side of this package.
"""
