"""The ModelServe room: serving a FineTuneJob's adapter (or given URIs) on the server image.

Same shape as the FineTuneJob room; it shares only the runtime (the one start-up, API door, settings,
metrics) and the entry point with it, and reads FineTuneJobs' status as data.
"""
