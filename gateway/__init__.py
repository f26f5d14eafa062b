"""The Envoy gateway: config rendering (render.py) and the error-reshaping Lua filter (errors.lua)."""
