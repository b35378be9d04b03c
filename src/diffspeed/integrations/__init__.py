"""Adapters to other libraries (``diffspeed.integrations.diffusers.Scheduler``)."""
