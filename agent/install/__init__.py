"""Install and repair of the meshnode CNI plugin binary and its entry in the primary conflist.

- `conflist`: pure logic (primary selection as kubelet does, chain in, remove ours);
- `binary`, `atomic`: atomic copies into the CNI dirs;
- `installer.Installer`: install / check / repair / uninstall / upgrade-safe stop / status;
- `outcome`: `CheckResult` and `RepairOutcome`, what the installer returns and the watcher reads;
- `watcher.InstallWatcher`: inotify on net.d and the bin dir, debounced, throttled repair;
- `metrics`: `meshnode_cni_install_repairs_total{reason}`, `meshnode_cni_install_ready`.

Typical agent use::

    installer = Installer(InstallConfig(entry=PluginEntry(agent_socket=sock)))
    installer.start()             # install (or wait for the primary CNI), then watch
    ready = installer.ready()     # for the readiness endpoint
    installer.stop(upgrade=True)  # restart/upgrade: plugin and entry stay
"""

from agent.install.config import InstallConfig, PluginEntry
from agent.install.installer import Installer, InstallError, NoPrimaryConfig
from agent.install.outcome import CheckResult, RepairOutcome

__all__ = [
    "CheckResult",
    "InstallConfig",
    "InstallError",
    "Installer",
    "NoPrimaryConfig",
    "PluginEntry",
    "RepairOutcome",
]
