"""Backup and restore: the database and the installed packages in one archive (`python -m backup`)."""
