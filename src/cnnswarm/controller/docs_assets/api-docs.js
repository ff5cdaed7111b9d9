// Starts Swagger UI (vendored in ./swagger-ui/) on the page's #swagger-ui element with the
// OpenAPI document its data-openapi-url names. A file rather than an inline script, so the
// page's Content-Security-Policy can forbid inline code.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    domNode: root,
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // The default sends the document to validator.swagger.io: nothing leaves this origin.
    validatorUrl: null,
  });
})();
