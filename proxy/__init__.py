"""The HTTP face of Switchyard: auth, validation, workflow starts, event relay."""
