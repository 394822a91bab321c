"""facescan's data plane: the program inside a detector Job pod (or a local subprocess).

It loads each leased image, detects faces and commits them, or records a typed failure.
It never imports the operator; the two meet in PostgreSQL (``facescan_queue``).
"""
