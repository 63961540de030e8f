"""The Kubernetes side: render the owned workload, apply it, write status and Events (kopf handlers)."""
