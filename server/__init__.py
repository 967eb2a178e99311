"""The web app and the core every process shares."""

VERSION = "0.1.0"
