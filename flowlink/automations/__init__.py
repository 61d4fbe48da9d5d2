"""Automations: flows started by events, cron schedules and webhook calls.

``triggers`` matches events to the automations listening and starts them (custom events at
once, native ones just before their transaction commits); ``scheduler`` fires cron slots;
``webhooks`` checks and starts webhook calls; ``sync`` writes the automation tables when a
workspace is applied; ``graph`` draws who triggers what for the console.
"""
