import flow_api


def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
    """Starts the greet flow as a child for each name and collects the greetings."""
    names = inputs.get("names", ["Ada", "Grace"])
    greetings = []
    for name in names:
        child = this.flow("greet", {"name": name})
        greetings.append(child.get("output_value")["greeting"])
    this.log(f"{len(greetings)} children done")
    return this.success(f"greeted {len(greetings)} people", greetings=greetings)
