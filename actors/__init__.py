"""Ray actors that run on worker nodes."""
