"""facescan's HTTP API (``facescan serve``, ``facescan-detector serve``): an ASGI app on
FastAPI/uvicorn that detects faces in uploaded images with the detector's own loading
and backends, in a bounded pool of worker processes.

It imports the detector (``facescan_detector``) and the queue contract
(``facescan_queue``), never the operator.
"""
