"""Base layer: the hub's configuration (``config``) and pure GPU knowledge shared by every room
(``gpu_health``: throttle reasons and the per-GPU health badge; ``topology``: GPU set choice by
NVLink/NUMA). Imports nothing else of ``server_monitor``."""
