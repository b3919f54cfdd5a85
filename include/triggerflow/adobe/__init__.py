"""Adobe clients: IMS tokens (cache, store, JWT), the one HTTP retry rule and the connection extras."""
