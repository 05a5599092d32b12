"""The observability scenarios run real role processes with the fault scenarios' stack."""

from tests.faults.conftest import stack  # noqa: F401 (a fixture)
