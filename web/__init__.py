"""The browser page, shipped as package data (served by ``streamvsr.server.app``)."""
