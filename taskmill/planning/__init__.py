"""The capacity forecast (seed 004), shared by the API's summary and the capacity role: scheduled runs and the
recurring runs not yet materialized, weighed by their type's mean elapsed time, per bucket to the horizon."""
