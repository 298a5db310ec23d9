"""``romav2-batch``: fleet-scale offline replay of many bags with Ray (docs/fleet.md).

Modules: :mod:`.inputs` (finding bags, output names, fingerprints), :mod:`.manifest` (what
was computed, for resumable reruns), :mod:`.worker` (the long-lived model actor),
:mod:`.chunks` (time chunks of long bags), :mod:`.report` (progress, table, summary.json),
:mod:`.cli` (the driver), :mod:`.pool` (the Ray side: the cluster, the actor pool). Ray is
imported only when there is work to do; the node and the replay never import it.
"""


class FleetError(RuntimeError):
    """The run cannot go on (exit status 1); ``str()`` is one line."""


def main(argv=None) -> int:
    """Console entry point ``romav2-batch`` (see :mod:`.cli`)."""
    from romav2_ros.fleet.cli import main as cli_main
    return cli_main(argv)
