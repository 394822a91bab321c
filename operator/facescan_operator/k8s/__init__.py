"""The Kubernetes runner: the FaceScan resource, detector Jobs, and the kopf operator."""
