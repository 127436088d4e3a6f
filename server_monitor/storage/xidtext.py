"""The process part of an NVIDIA XID kernel line, kept apart from the text every viewer sees.

The driver prints ``NVRM: Xid (PCI:0000:3b:00): 109, pid=1797828, name=pt_main_thread, Ch 00000008,
errorString CTX SWITCH TIMEOUT, Info 0x58005`` (``pid='<unknown>', name=<unknown>`` when no process
is known; some drivers print ``pid=`` alone). ``pid`` and ``name`` say who ran on the GPU: a viewer
with processes hidden must not read them (see docs/security.md N6). The hub therefore stores the
message without them (``xid_events.message``) and the kernel's line as it was in
``xid_events.kernel_line``, which only viewers who may see processes are shown; see
docs/security.md.
"""

import re

# ", pid=" after the XID code (the first one: the driver prints the process before its detail).
_PID = re.compile(r",\s*pid=")
# The process name is the task's comm: at most 15 characters (TASK_COMM_LEN 16), and it may hold
# ", " itself. The name is taken to end at the last ", " within that length, so a name with a
# comma never leaks its tail; a short name followed by a short detail field loses that field in
# the public text (the kernel line keeps it).
COMM_MAX = 15


def without_process(message):
    """``message`` (a kernel XID line, str or None) without its ``pid=…, name=…`` part.

    ``"NVRM: Xid (PCI:0000:18:00): 79, pid=4242, name=job, GPU has fallen off the bus."`` →
    ``"NVRM: Xid (PCI:0000:18:00): 79, GPU has fallen off the bus."``. A line without ``pid=`` is
    returned unchanged; None stays None. Never raises for any str.
    """
    if not message:
        return message
    found = _PID.search(message)
    if found is None:
        return message
    head, rest = message[:found.start()], message[found.end():]
    comma = rest.find(",")
    if comma < 0:  # nothing after the pid
        return head
    rest = rest[comma + 1:].lstrip()
    if rest.startswith("name="):
        name = rest[5:]
        ends = [i for i in range(min(len(name), COMM_MAX + 1)) if name.startswith(", ", i)]
        if not ends:
            later = name.find(", ", COMM_MAX + 1)
            ends = [later] if later >= 0 else []
        if not ends:  # the name runs to the end of the line
            return head
        rest = name[ends[-1] + 2:]
    return f"{head}, {rest}" if rest else head
