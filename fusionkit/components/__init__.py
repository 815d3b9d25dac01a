"""The built-in components; importing this package registers them."""

from fusionkit.components import image_encoders, metadata_encoders  # noqa: F401
from fusionkit.components.decisions import adf, average, single  # noqa: F401
from fusionkit.components.fusion import concat, mmfa  # noqa: F401
