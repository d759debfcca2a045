"""``nst serve``: a web page and an HTTP job API over the engine, safe by default.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart). ``settings`` holds the
server's options, ``uploads`` turns uploaded bytes into images, ``params`` turns a
job's JSON into a TransferConfig, ``jobs`` keeps jobs in folders and runs them,
``app`` is the FastAPI application and its guard, ``client`` is ``nst submit``'s side.
"""
