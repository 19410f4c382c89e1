"""Arrow schemas of the tables curate writes, and pydantic models of recipes."""
