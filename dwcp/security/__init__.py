"""Mutual TLS for the data port: a cluster CA, node certificates, SSL contexts."""
