"""What every stage shares: the class table, atomic writes, config and cache places, devices and precision,
the command-line convention, provenance. Imports no other poc59 package."""
