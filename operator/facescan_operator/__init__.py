"""facescan's control plane: the planner, the runners (Kubernetes Jobs, local
subprocesses) and the `facescan` command. It never imports the detector; the two meet in
PostgreSQL (``facescan_queue``) and in the detector's command line."""
