"""QGIS enum values under the names that exist on the running QGIS, from 3.22 to 4.x.

QGIS 3.36 moved many enums into ``Qgis`` as scoped enums (``QgsProcessingParameterNumber.Integer`` became
``Qgis.ProcessingNumberParameterType.Integer``, ``QgsProcessing.TypeRaster`` became
``Qgis.ProcessingSourceType.Raster``, ...). QGIS 3.x still accepts the old names as aliases; QGIS 4 (Qt6) drops
the aliases. QGIS 3.22 to 3.34 only have the old names. So each value here is looked up by its new name first and
by its old name only as a fallback, once, when the module is imported; the algorithms use these constants and
never spell either name themselves.
"""

from qgis.core import (
    Qgis,
    QgsColorRampShader,
    QgsProcessing,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
)

__all__ = [
    "NUMBER_INTEGER",
    "NUMBER_DOUBLE",
    "SOURCE_RASTER",
    "SOURCE_VECTOR_POLYGON",
    "PARAMETER_FLAG_ADVANCED",
    "FILE_BEHAVIOR_FILE",
    "FIELD_TYPE_NUMERIC",
    "SHADER_INTERPOLATION_LINEAR",
    "qgis_enum",
]


def qgis_enum(new_scope, new_member, old_owner, old_member):
    """``Qgis.<new_scope>.<new_member>`` where this QGIS has it, else ``<old_owner>.<old_member>``.

    Names are passed as strings so that no version ever evaluates a name it lacks.
    """
    scope = getattr(Qgis, new_scope, None)
    if scope is not None and hasattr(scope, new_member):
        return getattr(scope, new_member)
    return getattr(old_owner, old_member)


#: Whole-number data type of a QgsProcessingParameterNumber.
NUMBER_INTEGER = qgis_enum("ProcessingNumberParameterType", "Integer", QgsProcessingParameterNumber, "Integer")
#: Floating-point data type of a QgsProcessingParameterNumber.
NUMBER_DOUBLE = qgis_enum("ProcessingNumberParameterType", "Double", QgsProcessingParameterNumber, "Double")
#: Layer type filter: any raster layer.
SOURCE_RASTER = qgis_enum("ProcessingSourceType", "Raster", QgsProcessing, "TypeRaster")
#: Layer type filter: polygon vector layers.
SOURCE_VECTOR_POLYGON = qgis_enum("ProcessingSourceType", "VectorPolygon", QgsProcessing, "TypeVectorPolygon")
#: Parameter flag: shown under "Advanced Parameters".
PARAMETER_FLAG_ADVANCED = qgis_enum("ProcessingParameterFlag", "Advanced", QgsProcessingParameterDefinition,
                                    "FlagAdvanced")
#: QgsProcessingParameterFile behaviour: a file (not a folder).
FILE_BEHAVIOR_FILE = qgis_enum("ProcessingFileParameterBehavior", "File", QgsProcessingParameterFile, "File")
#: QgsProcessingParameterField data type: numeric fields only.
FIELD_TYPE_NUMERIC = qgis_enum("ProcessingFieldParameterDataType", "Numeric", QgsProcessingParameterField, "Numeric")
#: Colour ramp shader interpolation: linear between the ramp's stops.
SHADER_INTERPOLATION_LINEAR = qgis_enum("ShaderInterpolationMethod", "Linear", QgsColorRampShader, "Interpolated")
