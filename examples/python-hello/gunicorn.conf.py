# Read by gunicorn from the working directory (the app's slug) at startup.
# gunicorn >= 25 opens a control socket under $HOME/.gunicorn by default; on
# mini-MAR $HOME is the unpacked slug, which may be read-only, so turn it off.
control_socket_disable = True
