"""`local`: a file on the local disk, the reference for warm reads and for close()."""
from . import Direct


class Local(Direct):
    name = "local"
    order = 20
    summary = "a file on the local disk: the reference for warm reads and for close()"
    color = "#9467bd"
