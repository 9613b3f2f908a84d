package redisdest

import "github.com/sluice-cdi/sluice/router/template"

// parseTemplate parses a stream template (router/template): {source},
// {type} and {event} (a track event's name, empty for other types).
func parseTemplate(s string) (template.Template, error) {
	return template.Parse(s, template.Source, template.Type, template.Event)
}

// CheckTemplate reports whether s is a valid stream template.
func CheckTemplate(s string) error {
	_, err := parseTemplate(s)
	return err
}
