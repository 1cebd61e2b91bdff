// Validates FHIR R4 JSON resources with HAPI FHIR's instance validator, many in one JVM run
// (the validator takes seconds to start). stepcare's streams/devtools/fhir_validator.py compiles
// and runs it; the jars come from Maven (`stepcare fhir-validator fetch`, `make jars`).
//
//   java -cp 'classes:libs/*' Validate [--support FILE]... FILE...
//
// --support FILE: a conformance resource (Questionnaire, CodeSystem, ValueSet,
// StructureDefinition) the validator may resolve, such as stepcare's FACT-L Questionnaire.
// Prints one JSON line per FILE: {"file": ..., "issues": [{"severity", "location", "message"}]}.
// Offline: the terminology is the validator's own (no terminology server is asked).

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.SingleValidationMessage;
import com.google.gson.GsonBuilder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.PrePopulatedValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.Questionnaire;

public class Validate {
  public static void main(String[] args) throws Exception {
    FhirContext ctx = FhirContext.forR4();
    Map<String, IBaseResource> questionnaires = new HashMap<>(); // by url and url|version
    PrePopulatedValidationSupport own = new PrePopulatedValidationSupport(ctx) {
      @Override // PrePopulatedValidationSupport keeps no Questionnaire: resolve them here
      public <T extends IBaseResource> T fetchResource(Class<T> type, String url) {
        IBaseResource found = questionnaires.get(url);
        if (found != null && (type == null || type.isInstance(found))) {
          @SuppressWarnings("unchecked") T resource = (T) found;
          return resource;
        }
        return super.fetchResource(type, url);
      }
    };
    List<String> files = new ArrayList<>();
    for (int i = 0; i < args.length; i++) {
      if (args[i].equals("--support")) {
        IBaseResource resource = ctx.newJsonParser().parseResource(read(args[++i]));
        if (resource instanceof Questionnaire q) {
          questionnaires.put(q.getUrl(), q);
          questionnaires.put(q.getUrl() + "|" + q.getVersion(), q);
        } else {
          own.addResource(resource);
        }
      } else {
        files.add(args[i]);
      }
    }
    ValidationSupportChain chain = new ValidationSupportChain(
        new DefaultProfileValidationSupport(ctx),
        new CommonCodeSystemsTerminologyService(ctx),
        new InMemoryTerminologyServerValidationSupport(ctx),
        new SnapshotGeneratingValidationSupport(ctx),
        own);
    FhirValidator validator = ctx.newValidator();
    validator.registerValidatorModule(new FhirInstanceValidator(chain));

    var gson = new GsonBuilder().disableHtmlEscaping().create();
    for (String file : files) {
      List<Map<String, String>> issues = new ArrayList<>();
      try {
        for (SingleValidationMessage m : validator.validateWithResult(read(file)).getMessages()) {
          issues.add(issue(m.getSeverity().getCode(), m.getLocationString(), m.getMessage()));
        }
      } catch (Exception e) { // unreadable, not JSON, not a resource: one fatal issue
        issues.add(issue("fatal", file, e.getClass().getSimpleName() + ": " + e.getMessage()));
      }
      Map<String, Object> line = new LinkedHashMap<>();
      line.put("file", file);
      line.put("issues", issues);
      System.out.println(gson.toJson(line));
    }
  }

  private static Map<String, String> issue(String severity, String location, String message) {
    Map<String, String> issue = new LinkedHashMap<>();
    issue.put("severity", severity);
    issue.put("location", location);
    issue.put("message", message);
    return issue;
  }

  private static String read(String file) throws Exception {
    return Files.readString(Path.of(file));
  }
}
