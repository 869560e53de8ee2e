// Starts Swagger UI on /docs from a file of the service (the page's CSP allows no inline
// script). validatorUrl: null: Swagger UI would otherwise send the spec to an outside validator.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
  deepLinking: true,
  validatorUrl: null,
});
