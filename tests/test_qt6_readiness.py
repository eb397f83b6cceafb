"""All plugin code (the ZIP's Python files and scripts/) is ready for PyQt6 / QGIS 4, checked on every QGIS.

The rules are those of QGIS's own ``pyqt5_to_pyqt6.py`` migration script (see ``tests/qt6_checker.py``); the
enum rule asks the running bindings, so each QGIS of the version matrix checks against its own Qt and PyQGIS.
A control snippet with one known problem per rule proves the checker finds what it must.
"""

import importlib.util
from pathlib import Path

import pytest

from qt6_checker import check_file, check_source, qt_namespace

ROOT = Path(__file__).resolve().parents[1]

CONTROL = '''
from PyQt5.QtCore import QRegExp
from qgis.PyQt.QtCore import Qt, QVariant
from qgis.PyQt.QtGui import QColor
from qgis.core import QgsProcessing

colour = QColor(Qt.transparent)
button = Qt.MidButton
colour = Qt.red
null = QVariant()
dialog.exec_()
fine = (Qt.GlobalColor.transparent, QgsProcessing.TEMPORARY_OUTPUT)
'''


def _plugin_python_files():
    spec = importlib.util.spec_from_file_location("package_script", ROOT / "scripts" / "package.py")
    package = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(package)
    zipped = [ROOT / path for path in package.plugin_files() if path.suffix == ".py"]
    return sorted(set(zipped) | set((ROOT / "scripts").glob("*.py")))


@pytest.fixture(scope="module")
def namespace(qgis_app):
    return qt_namespace()


def test_checker_finds_each_kind_of_problem(namespace):
    findings = check_source(CONTROL, "control.py", namespace)
    lines = sorted(int(f.split(":")[1]) for f in findings)
    # line 2: PyQt5 import and QRegExp; 7: Qt.transparent; 8: Qt.MidButton; 9: Qt.red; 10: QVariant();
    # 11: exec_(). Line 12 is correct code and must not be reported.
    assert lines == [2, 2, 7, 8, 9, 10, 11], findings
    assert any("Qt.GlobalColor.transparent" in f for f in findings), findings


def test_old_qgis_enum_names_are_reported_where_they_are_not_aliases(namespace):
    """``QgsProcessingParameterNumber.Integer`` is reported wherever it is the class's own enum (QGIS < 3.36)."""
    from qgis.core import QgsProcessingParameterNumber

    source = "from qgis.core import QgsProcessingParameterNumber\nkind = QgsProcessingParameterNumber.Integer\n"
    own_enum = type(QgsProcessingParameterNumber.Integer) in vars(QgsProcessingParameterNumber).values()
    assert bool(check_source(source, "old.py", namespace)) == own_enum


def test_plugin_code_has_no_finding(namespace):
    files = _plugin_python_files()
    names = {path.relative_to(ROOT).as_posix() for path in files}
    assert {"plugin.py", "algorithms/segmentation_base.py", "scripts/render_outputs.py"} <= names
    findings = [finding for path in files for finding in check_file(path, namespace)]
    assert findings == []
