"""Kubelet PodResources API."""
