import flow_api


def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
    """Greets someone, counting visits in a setting."""
    # Run directly, inputs are {"name": ...}; started by an event, they are the event.
    name = inputs.get("name") or (inputs.get("payload") or {}).get("name", "world")
    counter = system.setting("greetings-count")
    count = (counter.get("value") if counter.exists() else 0) + 1
    counter.save(value=count)
    greeting = f"{system.config['GREETING']}, {name}!"
    this.log(greeting, f"(greeting number {count})")
    return this.success(greeting, greeting=greeting, count=count)
