"""Server Monitor agent: collects host and NVIDIA GPU metrics and reports them to the hub.

Runs on Python 3.9+ with psutil, PyYAML and urllib3, which the zipapp carries. Parsing
(``nvsmi``, ``cgroups``) is pure and separated from I/O (``runner``, ``gpu``, ``procinfo``,
``host``, ``transport``).
"""

__version__ = "0.1.0"
