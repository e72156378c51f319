"""Claude Code's side of the plugin: the hooks it runs, and setup / sync / uninstall / doctor."""
