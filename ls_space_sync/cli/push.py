"""Commands that write into Label Studio: ``push``, ``restore``, ``mirror``."""

from ls_space_sync.push.engine import push_command  # noqa: F401
from ls_space_sync.push.mirror import mirror_command  # noqa: F401
from ls_space_sync.push.restore import restore_command  # noqa: F401
