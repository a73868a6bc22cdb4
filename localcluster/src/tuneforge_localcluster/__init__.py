"""A real one-machine Kubernetes cluster for Tuneforge's tests and demo.

The control plane, kubelet and kube-proxy are built from Go modules, the node runs
containerd + runc + bridge CNI from Debian, kwok fakes GPU nodes, and images are built
with buildah and served from a registry on loopback. Product code never imports this.
"""
