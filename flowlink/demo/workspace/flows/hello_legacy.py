def handler(system, this):
    return this.success("all done")
