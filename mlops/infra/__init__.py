"""Infrastructure as Pulumi programs: the `Pulumi stack` branch of recipe → Config → Plan.

Importing this package is cheap (no Pulumi import). The programs and components live in
:mod:`mlops.infra.aws`, :mod:`mlops.infra.k8s` and :mod:`mlops.infra.programs`, which import Pulumi;
:func:`planned_resources` runs a program offline under Pulumi's mocks. Which components and scheduled
deployments a program builds is the Plan's to say: the caller builds the :class:`InfraSpec` from it.
"""

from mlops.infra._spec import InfraSpec, Schedule

__all__ = sorted(["InfraSpec", "Schedule", "planned_resources"])


def planned_resources(spec: InfraSpec) -> list[dict]:
    """Every resource the stack's program declares for `spec`, offline (Pulumi mocks; no CLI, no cloud)."""
    from mlops.infra._offline import planned_resources as run

    return run(spec)
