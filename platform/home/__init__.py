"""The platform's front door, served by the web: the API docs' pages."""
