"""The work inside flow steps, one module per stage; each reads and writes through storage/."""
