"""Static Qt6 / QGIS 4 readiness check of Python source, after the rules of QGIS's ``pyqt5_to_pyqt6.py``.

QGIS's migration script (``scripts/pyqt5_to_pyqt6/pyqt5_to_pyqt6.py`` in the QGIS source tree) rewrites a
plugin for PyQt6 / QGIS 4. Its dry run reports what it would change; this module applies the same rules to our
files and returns the findings, so a test can require that there are none:

- imports from ``PyQt5`` (use ``qgis.PyQt``), ``resources_rc`` (compiled resources are gone), ``QRegExp``;
- unscoped enum values, ``Owner.member`` where the value's enum type is ``Owner.<EnumName>`` (Qt6 keeps only
  ``Owner.EnumName.member``): found by asking the running PyQt/PyQGIS bindings what each name is, the way the
  script's enum table was built from them;
- enum values renamed in Qt6 (``Qt.MidButton``, ``QPainter.HighQualityAntialiasing``, ...);
- ``exec_`` calls and definitions, ``qApp``, ``QVariant()`` as NULL, ``desktop()``, ``fontMetrics().width``,
  ``activated[str]``, ``addAction`` with four or more arguments, eight-argument ``QDateTime``.

The enum rule also catches the QGIS 3.36 renames: on QGIS < 3.36, ``QgsProcessingParameterNumber.Integer`` is of
type ``QgsProcessingParameterNumber.Type`` and is reported; the plugin spells such values through
``algorithms/qgis_compat.py`` instead.
"""

import ast
import importlib
import inspect
from pathlib import Path

__all__ = ["Finding", "check_file", "check_source", "qt_namespace"]

QT_MODULES = (
    "qgis.PyQt.QtCore", "qgis.PyQt.QtGui", "qgis.PyQt.QtWidgets", "qgis.PyQt.QtXml", "qgis.PyQt.QtNetwork",
    "qgis.PyQt.QtSvg", "qgis.PyQt.QtPrintSupport", "qgis.PyQt.QtSql", "qgis.PyQt.QtTest",
    "qgis.core", "qgis.gui", "qgis.analysis",
)
RENAMED_ENUMS = {
    ("Qt", "MidButton"): "Qt.MouseButton.MiddleButton",
    ("Qt", "TextColorRole"): "Qt.ItemDataRole.ForegroundRole",
    ("Qt", "BackgroundColorRole"): "Qt.ItemDataRole.BackgroundRole",
    ("QPainter", "HighQualityAntialiasing"): "QPainter.RenderHint.Antialiasing",
}
REMOVED_IMPORTS = {
    "QRegExp": "QRegExp is removed in Qt6: use QRegularExpression",
    "resources_rc": "compiled resources are removed in Qt6: load icons by file path",
    "qApp": "qApp is removed in Qt6: use QApplication.instance()",
}


class Finding(str):
    """``path:line:col message``: a str, so a list of them prints readably in an assertion."""


def qt_namespace():
    """Every public name of the Qt and QGIS modules the plugin may import, mapped to its object."""
    namespace = {}
    for name in QT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr in dir(module):
            if not attr.startswith("_"):
                namespace.setdefault(attr, getattr(module, attr))
    return namespace


def _enum_scope(owner, member):
    """The name under which ``owner`` holds the enum type of ``owner.member``, or None if it is no enum value."""
    try:
        value = getattr(owner, member)
    except Exception:  # noqa: BLE001 - any failure means: not a value we can judge
        return None
    if inspect.isclass(value) or callable(value) or isinstance(value, (str, bytes, float, bool)):
        return None
    value_type = type(value)
    if value_type in (int, type(None)):
        return None
    for klass in inspect.getmro(owner) if inspect.isclass(owner) else (owner,):
        for attr, candidate in vars(klass).items():
            if candidate is value_type and attr != member:
                return attr
    return None


def check_source(source, filename="<source>", namespace=None):
    """Findings in one Python source text (an empty list when it is ready for PyQt6 / QGIS 4)."""
    namespace = qt_namespace() if namespace is None else namespace
    tree = ast.parse(source, filename=filename)
    findings = []

    def report(node, message):
        findings.append(Finding(f"{filename}:{node.lineno}:{node.col_offset} {message}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.module and (node.module == "PyQt5" or node.module.startswith("PyQt5.")):
                report(node, f"import from {node.module}: use qgis.PyQt")
            for alias in node.names:
                if alias.name in REMOVED_IMPORTS:
                    report(node, REMOVED_IMPORTS[alias.name])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "PyQt5" or alias.name.startswith("PyQt5."):
                    report(node, f"import {alias.name}: use qgis.PyQt")
        elif isinstance(node, ast.FunctionDef) and node.name == "exec_":
            report(node, "def exec_: name it exec")
        elif isinstance(node, ast.Name) and node.id == "qApp":
            report(node, REMOVED_IMPORTS["qApp"])
        elif isinstance(node, ast.Subscript):
            if (isinstance(node.value, ast.Attribute) and node.value.attr == "activated"
                    and isinstance(node.slice, ast.Name) and node.slice.id == "str"):
                report(node, "activated[str] is removed in Qt6: use textActivated")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                if func.attr == "exec_":
                    report(node, "exec_() is removed in Qt6: call exec()")
                elif func.attr == "addAction" and len(node.args) >= 4:
                    report(node, "fragile addAction(...) overload: create the QAction, then addAction(action)")
                elif func.attr == "desktop" and not node.args:
                    report(node, "QDesktopWidget is removed in Qt6")
            elif isinstance(func, ast.Name):
                if func.id == "QVariant" and (not node.args or (
                        len(node.args) == 1 and isinstance(node.args[0], ast.Attribute)
                        and isinstance(node.args[0].value, ast.Name) and node.args[0].value.id == "QVariant")):
                    report(node, "QVariant() as a null value: use qgis.core.NULL")
                elif func.id == "QDateTime" and len(node.args) == 8:
                    report(node, "QDateTime(y, m, d, h, min, s, ms, ts): use QDateTime(QDate(...), QTime(...), ts)")
        elif isinstance(node, ast.Attribute):
            if node.attr == "width" and isinstance(node.value, ast.Call) and (
                    (isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "fontMetrics")
                    or (isinstance(node.value.func, ast.Name) and node.value.func.id == "QFontMetrics")):
                report(node, "QFontMetrics.width() is removed in Qt6: use horizontalAdvance()")
            if not isinstance(node.value, ast.Name):
                continue
            owner_name = node.value.id
            if (owner_name, node.attr) in RENAMED_ENUMS:
                report(node, f"{owner_name}.{node.attr} is renamed in Qt6: {RENAMED_ENUMS[owner_name, node.attr]}")
                continue
            if owner_name not in namespace:
                continue
            scope = _enum_scope(namespace[owner_name], node.attr)
            if scope is not None:
                report(node, f"unscoped enum {owner_name}.{node.attr}: write {owner_name}.{scope}.{node.attr}")
    return findings


def check_file(path, namespace=None):
    """Findings in one file, reported with its path."""
    path = Path(path)
    return check_source(path.read_text(encoding="utf-8"), str(path), namespace)
