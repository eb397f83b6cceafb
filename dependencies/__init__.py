"""Installing and inspecting the plugin's Python dependencies (torch, torchvision, SMP, ...). No QGIS import.

:mod:`.installer` installs into a folder the plugin owns and proves QGIS's own packages unchanged;
:mod:`.variants` chooses the torch build from :mod:`.gpu` facts; :mod:`.environment` reports what the plugin
sees and warns when a GPU is present but torch cannot use it.
"""
